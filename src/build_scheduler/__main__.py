from build_scheduler.cli import main

main()
