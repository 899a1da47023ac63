"""Celery settings for gleitzeit's workers, beat and submitting apps.

``gleitzeit.worker`` imports this module when it is importable (``celeryconfig`` on
``sys.path``, or the module named by ``GLEITZEIT_CELERY_CONFIG``); its lowercase names
override gleitzeit's defaults, and ``CELERY_BROKER_URL`` in the environment overrides
``broker_url``. gleitzeit already sets what its guarantees need: JSON only, late acks,
redelivery of work lost with its worker, prefetch 1 (``gleitzeit.worker.celery_defaults``).
Change those only knowing why.
"""

# Redis redelivers a message that was not acknowledged within the visibility timeout,
# even while its first delivery still runs: keep it above your longest task timeout and
# retry backoff (gleitzeit's default backoff cap is 300 s).
broker_transport_options = {"visibility_timeout": 3600}

# Plain Celery tasks that callers wait on need a result backend; gleitzeit's own
# executor does not use one (outcomes live in the SQL store).
# result_backend = "redis://localhost:6379/1"

# Processes per worker; scale out with more workers rather than a larger prefork pool.
# worker_concurrency = 4

timezone = "UTC"
