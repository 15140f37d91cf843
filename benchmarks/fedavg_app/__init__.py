"""A minimal Flower FedAvg app on F3OCUS's model and data, the floor ``bench_deployment.py`` measures
F3OCUS's deployment cost against (written into a Flower app folder by :func:`write_app`)."""
