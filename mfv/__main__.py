import sys

from ._process import keep_freed_memory
from .cli import main

keep_freed_memory()  # `python -m mfv` owns its process: keep big freed buffers for the next step
sys.exit(main())
