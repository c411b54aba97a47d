"""`python -m deeplab.serve`: the command at its first name (the code lives in deeplab/deploy/serve.py)."""

from deeplab.deploy.serve import main

if __name__ == "__main__":
    main()
