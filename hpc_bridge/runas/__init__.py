"""Optional per-user execution: identities mapped to POSIX users, jobs submitted as them through a
fixed-argument root helper run with sudo (helper.py). Off by default (`run_as.mode: service`)."""
