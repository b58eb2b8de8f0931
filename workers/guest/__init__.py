"""The guest side of the message channel: `vmorch_guest.py` runs inside guests (standard
library only, Python 3.8+); it is shipped with vmorch and copied into images as one file."""
