"""Ray Data stages of the render job and the storage they read and write (fsspec: local, file://, s3://)."""
