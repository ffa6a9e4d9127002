from mlops_ray.cli import main

main()
