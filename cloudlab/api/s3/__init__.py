"""The S3 REST protocol (restXml, driven by botocore's S3 model) as a face over the Walrus engine."""
