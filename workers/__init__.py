"""What runs beside the hypervisors: the Celery app, the hypervisor adapter, the agent."""
