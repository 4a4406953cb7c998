"""`make bench`: the order API measured against a floor and a naive peer, side by side.

See bench/README.md.
"""
