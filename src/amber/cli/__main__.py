from amber.cli import main

main()
