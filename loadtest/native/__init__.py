"""The compiled gRPC client (h2call.c over libnghttp2); loadtest.native_client loads it."""
