def main() -> int:
    print("tcpq-top: not yet")
    return 0
