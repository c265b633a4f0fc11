from brainmri.cli import main

main()
