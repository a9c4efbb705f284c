"""The HTTP edge: app factory, routes, middleware, JWT verification, operations, serving."""
