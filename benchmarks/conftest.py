"""Put this folder on sys.path so the suites can import benchutil."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
