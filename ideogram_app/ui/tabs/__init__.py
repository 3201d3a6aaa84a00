"""The app's tabs, one module each: components, their wiring and thin handlers (`ui/app.py` assembles them)."""
