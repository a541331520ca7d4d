"""Notify: the notify function's part (signed webhooks when a result lands, dead letters).
Ships in notify.zip with the core."""
