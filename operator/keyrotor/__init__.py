"""keyrotor: AWS IAM access key rotation through Secrets Manager, mirrored into Kubernetes."""

__version__ = "0.1.0"
