"""`meshward manifest generate`: everything a cluster needs, as Kubernetes objects."""
