"""`python -m deeplab.demo`: the command at its first name (the code lives in deeplab/deploy/demo.py)."""

from deeplab.deploy.demo import main

if __name__ == "__main__":
    main()
