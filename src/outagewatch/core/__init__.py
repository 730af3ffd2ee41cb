"""The pure core: plain data in, decisions out, ``now`` passed in. No I/O, no clocks."""
