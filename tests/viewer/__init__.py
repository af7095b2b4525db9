"""Browser tests: the viewers the hub serves, driven in Debian's headless Chromium."""
