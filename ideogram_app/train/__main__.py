"""`python -m ideogram_app.train` and `accelerate launch -m ideogram_app.train` (docs/training.md)."""
import sys

from ideogram_app.train.cli import main

sys.exit(main())
