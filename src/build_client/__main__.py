from build_client.cli import main

main()
