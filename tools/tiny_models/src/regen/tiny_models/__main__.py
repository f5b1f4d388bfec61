import sys

from regen.tiny_models.cli import main

sys.exit(main())
