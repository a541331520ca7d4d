# Conditioning inputs (issue 17): the inputs bucket that POST /v1/uploads and inline data:
# URLs write to, and the further buckets a job's conditions may read from.

variable "inputs_retention_days" {
  description = "Days uploaded and inline conditioning inputs (gs://PREFIX-inputs/keys/) are kept after their Custom-Time: set when intake stores them, moved forward when a job is accepted with them and it is more than a day old. A job checks its inputs when it is accepted and the worker reads them when it renders, so keep this longer than a job may wait in the queue. At least 2: intake skips moving a Custom-Time less than a day old."
  type        = number
  default     = 7

  validation {
    condition     = var.inputs_retention_days >= 2 && var.inputs_retention_days <= 365 && floor(var.inputs_retention_days) == var.inputs_retention_days
    error_message = "inputs_retention_days must be a whole number between 2 and 365 (intake moves an input's Custom-Time forward only once it is a day old)."
  }
}

variable "input_buckets" {
  description = "Buckets besides the inputs bucket that a job's conditions (gs:// images and videos) may name, each with the API key ids allowed to (bucket => [key ids]). Every key may always name its own gs://PREFIX-inputs/keys/KEY_ID/. The API, the prompt-file function and the workers get object read on these buckets, nothing more."
  type        = map(list(string))
  default     = {}

  validation {
    condition     = alltrue([for bucket, keys in var.input_buckets : can(regex("^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$", bucket)) && length(keys) > 0])
    error_message = "input_buckets must map bucket names to a non-empty list of API key ids."
  }
}

variable "inputs_cors_origins" {
  description = "Origins besides the API function's own (https://REGION-PROJECT.cloudfunctions.net) whose web pages may PUT uploads to the inputs bucket from a browser: the function's run.app URL or a custom domain serving the API."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for origin in var.inputs_cors_origins : can(regex("^https://[a-z0-9.-]+(:[0-9]{1,5})?$", origin))])
    error_message = "inputs_cors_origins must be https origins (scheme and host, no path), e.g. https://api.example.com."
  }
}
