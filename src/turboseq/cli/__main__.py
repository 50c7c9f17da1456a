import sys

from turboseq.cli import main

sys.exit(main())
