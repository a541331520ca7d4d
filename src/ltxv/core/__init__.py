"""The core every part shares: the job contract and its store, settings, schemas, model
profiles, results, logs, errors, names. Ships in every archive; imports no other part."""
