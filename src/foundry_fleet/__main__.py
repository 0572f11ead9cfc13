from foundry_fleet.cli.main import main

main()
