"""The basics every layer may use and that import nothing of ours: errors, argument checks, precision, progress."""
