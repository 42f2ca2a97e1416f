"""How a fleet's users are spread over workers: threads of this process, or Ray tasks."""
