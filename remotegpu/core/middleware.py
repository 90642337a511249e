from . import request_context


class RequestContextMiddleware:
    """Makes the request's IP and user agent available to services for the audit log."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = request_context.set_(request_context.context_from_request(request))
        try:
            return self.get_response(request)
        finally:
            request_context.reset(token)
