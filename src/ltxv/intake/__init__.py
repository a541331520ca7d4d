"""Intake: the submit function's part (the HTTP API and its web page, request validation,
prompt files, the redispatch sweep). Ships in submit.zip with the core."""
