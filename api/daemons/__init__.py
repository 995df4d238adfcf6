"""The API side's long-running processes that are not HTTP: each runs inside API processes by default, or
alone as its own `wanq` command (the API image runs them all; none needs torch).

- dispatcher.py: feeds each model's Celery queue from the tenants' queues, fairly (`wanq dispatcher`).
- upkeep.py: requeues the jobs of dead workers, repairs broken queue invariants, deletes expired outputs.
- webhooks.py: delivers webhooks with retries (`wanq webhook-delivery`).
"""
