"""Generated gRPC/protobuf code for the dapr.proto.sentry.v1 wire contract (see proto/)."""
