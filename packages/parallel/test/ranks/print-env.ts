// Prints the launch layout this rank reads from its environment.
import { launchEnv } from '@dsv3/parallel';

console.log(`DSV3_RESULT ${JSON.stringify(launchEnv())}`);
