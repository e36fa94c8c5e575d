from perturbd.cli import main

main()
