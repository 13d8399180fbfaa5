#!/usr/bin/env python3
"""Independent gRPC check of a running Portico: health ("" and each full service name) and
reflection on every service port. Needs `pip install grpcio grpcio-health-checking grpcio-reflection`.

Usage: tools/grpc_check.py [host]   (default 127.0.0.1; ports 50051-50054)
Exit status 1 when any service is not SERVING.
"""
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

SERVICES = {
    50051: ["portico.auth.v1.AuthService"],
    50052: ["portico.content.v1.ContentService"],
    50053: ["portico.chat.v1.ChatService"],
    50054: ["portico.ratelimit.v1.RateLimitService", "envoy.service.ratelimit.v3.RateLimitService"],
}

def main() -> int:
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    healthy = True
    for port, services in SERVICES.items():
        channel = grpc.insecure_channel(f"{host}:{port}")
        health = health_pb2_grpc.HealthStub(channel)
        for service in [""] + services:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
                name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            except grpc.RpcError as error:
                name = f"ERROR {error.code().name}"
            healthy &= name == "SERVING"
            print(f"{port} {service or '(server)':<46} {name}")
        try:
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            response = next(reflection.ServerReflectionInfo(iter([request]), timeout=2))
            listed = sorted(s.name for s in response.list_services_response.service)
            print(f"{port} reflection: {', '.join(listed)}")
        except grpc.RpcError as error:
            print(f"{port} reflection: ERROR {error.code().name}")
    return 0 if healthy else 1

if __name__ == "__main__":
    sys.exit(main())
