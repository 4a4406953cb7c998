"""What stands between the internet and the order path, in the gateway: API keys
(api_keys.py), per-caller rate limits in Redis (rate_limit.py), per-service
circuit breakers (breakers.py) and load shedding (shedding.py). CORS is
Flask-Cors, configured in gateway/app.py. How a client sees each is in
docs/api.md ("Limits and overload").
"""
