"""Celery settings for gleitzeit's workers, beat and submitting apps.

``gleitzeit.worker`` imports this module when it is importable (``celeryconfig`` on
``sys.path``, or the module named by ``GLEITZEIT_CELERY_CONFIG``); its lowercase names
override gleitzeit's defaults (``gleitzeit.worker.celery_defaults``), except that
``broker_transport_options`` adds to them; ``CELERY_BROKER_URL`` in the environment
overrides ``broker_url``. The settings below are the ones gleitzeit's guarantees rest on,
spelled out; ``gleitzeit check`` reports any that a change here breaks.
"""

# JSON only: pickle would let whoever can publish a message run code on the workers.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]

# Acknowledge a message only after its task ran, and hand it back to the broker when the
# pool process running it dies (OOM killer, SIGKILL): the redelivery lets gleitzeit see
# the loss at once. A task that kills its worker every time fails after
# GLEITZEIT_MAX_LOST_ATTEMPTS losses instead of looping.
task_acks_late = True
task_reject_on_worker_lost = True

# Each worker process takes one message at a time: none waits behind a long task.
worker_prefetch_multiplier = 1

# Redis redelivers a message that was not acknowledged within the visibility timeout,
# even while its first delivery still runs: keep it above your longest task timeout and
# retry backoff (gleitzeit's default backoff cap is 300 s).
broker_transport_options = {"visibility_timeout": 3600}

# Beat runs gleitzeit's reconciler every GLEITZEIT_RECONCILE_INTERVAL seconds (30); the
# entry is added by gleitzeit.worker. To keep it off busy workers, give it a queue:
# task_routes = {"gleitzeit.reconcile": {"queue": "gleitzeit"}}

# Plain Celery tasks that callers wait on need a result backend; gleitzeit's own
# executor does not use one (outcomes live in the SQL store).
# result_backend = "redis://localhost:6379/1"

# Processes per worker; scale out with more workers rather than a larger prefork pool.
# worker_concurrency = 4

timezone = "UTC"
