"""GA4GH Task Execution Service 1.1: models, service layer and the Flask blueprint."""
