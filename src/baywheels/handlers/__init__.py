"""HTTP handlers: decode the request, call one or two query functions, encode the answer."""
