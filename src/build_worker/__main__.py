from build_worker.cli import main

main()
