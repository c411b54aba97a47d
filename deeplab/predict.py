"""`python -m deeplab.predict`: the command at its first name (the code lives in deeplab/deploy/predict.py)."""

from deeplab.deploy.predict import main

if __name__ == "__main__":
    main()
