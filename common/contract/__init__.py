"""The contract every process shares: schemas per resource, errors and their body,
event envelope and names, who is calling (caller identity, tokens) and the context
keys an RPC carries, the settings, and the registry of the services."""
