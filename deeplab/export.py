"""`python -m deeplab.export`: the command at its first name (the code lives in deeplab/deploy/export.py)."""

from deeplab.deploy.export import main

if __name__ == "__main__":
    main()
