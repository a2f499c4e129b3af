"""`rtsoak proxy`: the user's own client through a recording, fault-injecting relay."""
