"""Build and development tools (not imported at run time): the slim botocore data for the Lambda
package (``slim_botocore``) and the in-process runner of the template's functions
(``local_invoke``)."""
