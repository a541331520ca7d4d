"""A minimal receiver for ltx-video-pipeline webhooks: Flask and the standardwebhooks library.

    pip install flask standardwebhooks
    LTXV_WEBHOOK_SECRET=$(ltxv webhook secret) flask --app webhook_receiver_flask run --port 8099

The secret is your API key's own (`ltxv webhook secret`, or GET /v1/webhooks/secret).
While it is being rotated each delivery carries two signatures, and `verify` accepts the
delivery when either matches: switch LTXV_WEBHOOK_SECRET to the new secret at any time.
Verify the signature over the raw body before trusting anything in it, answer 2xx fast
(do slow work elsewhere), and use `webhook-id` to ignore a repeated delivery: a delivery
whose answer was lost is sent again with the same id.
"""

from __future__ import annotations

import os

from flask import Flask, abort, request
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

app = Flask(__name__)
webhook = Webhook(os.environ["LTXV_WEBHOOK_SECRET"])
handled: set[str] = set()  # in production: a table keyed by webhook-id


@app.post("/webhook")
def receive():
    try:
        event = webhook.verify(request.get_data(), dict(request.headers))
    except WebhookVerificationError:
        abort(400)
    event_id = request.headers["webhook-id"]
    if event_id in handled:
        return "", 204
    handled.add(event_id)
    job = event["data"]  # the job's result.json
    if event["type"] == "job.succeeded":
        app.logger.info("job %s: video at %s", job["job_id"], job["outputs"]["video"])
    else:  # job.failed or job.canceled
        app.logger.info("job %s %s: %s", job["job_id"], job["state"], job["error"])
    return "", 204
