"""``python -m src.config KEY [--config_path C] [--key=value ...]`` prints one resolved value (src/config/loader.py)."""
import sys

from src.config.loader import main

sys.exit(main(sys.argv[1:]))
